SELECT p.subject_id, p.handle FROM profiles AS p
WHERE EXISTS (SELECT 1 FROM profiles AS q WHERE q.avatar_key = p.avatar_key AND q.subject_id <> p.subject_id)
