SELECT a.subject_id AS a_id, b.subject_id AS b_id
FROM profiles AS a JOIN profiles AS b ON a.handle = b.handle AND a.subject_id < b.subject_id
