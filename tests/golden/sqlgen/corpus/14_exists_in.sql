SELECT p.subject_id,
       p.handle IN (SELECT q.handle FROM profiles AS q WHERE q.app_id = 'duoshan') AS copied
FROM profiles AS p WHERE p.app_id = 'douyin'
