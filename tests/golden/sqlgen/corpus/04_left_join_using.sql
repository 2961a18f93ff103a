SELECT subject_id, p.handle, q.avatar_key
FROM profiles AS p LEFT JOIN profiles AS q USING (subject_id)
