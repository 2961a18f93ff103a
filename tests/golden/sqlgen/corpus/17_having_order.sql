SELECT app_id, count(*) AS n FROM profiles
GROUP BY app_id, handle HAVING max(avatar_key) IS NOT NULL ORDER BY n DESC, app_id LIMIT 10
