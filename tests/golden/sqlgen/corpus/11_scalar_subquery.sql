SELECT p.subject_id,
       (SELECT max(q.handle) FROM profiles AS q WHERE q.app_id = 'duoshan') AS any_duoshan_handle
FROM profiles AS p
