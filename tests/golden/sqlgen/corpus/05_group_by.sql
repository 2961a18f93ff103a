SELECT app_id, count(*) AS n, count(DISTINCT handle) AS handles, max(avatar_key) AS last_avatar
FROM profiles GROUP BY app_id HAVING count(*) > 1 ORDER BY app_id
