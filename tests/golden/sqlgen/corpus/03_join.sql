SELECT a.subject_id, a.handle AS douyin_handle, b.handle AS duoshan_handle
FROM profiles AS a
JOIN profiles AS b ON a.subject_id = b.subject_id
WHERE a.app_id = 'douyin' AND b.app_id = 'duoshan'
