SELECT p.subject_id, p.created_at FROM profiles AS p
WHERE p.subject_id IN (SELECT q.subject_id FROM profiles AS q WHERE q.app_id = 'duoshan')
ORDER BY p.created_at
