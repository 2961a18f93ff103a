SELECT subject_id, handle,
       row_number() OVER (PARTITION BY app_id ORDER BY created_at) AS rn,
       count(*) OVER (PARTITION BY handle) AS same_handle
FROM profiles
