SELECT a.subject_id, a.handle AS handle, b.handle AS next_handle
FROM profiles AS a
JOIN profiles AS b ON a.subject_id + 1 = b.subject_id
WHERE a.app_id = 'douyin' AND b.app_id = 'douyin'
