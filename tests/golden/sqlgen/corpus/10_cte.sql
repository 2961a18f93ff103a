WITH counts AS (SELECT handle, count(*) AS n FROM profiles GROUP BY handle),
     dup AS (SELECT handle FROM counts WHERE n > 1)
SELECT p.subject_id, d.handle FROM profiles AS p JOIN dup AS d ON p.handle = d.handle
