SELECT t.subject_id, t.h
FROM (SELECT s.subject_id, s.h FROM (SELECT subject_id, lower(handle) AS h FROM profiles) AS s
      WHERE s.h IS NOT NULL) AS t
