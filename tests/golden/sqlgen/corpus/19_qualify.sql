SELECT subject_id, app_id FROM profiles
QUALIFY row_number() OVER (PARTITION BY app_id ORDER BY created_at DESC) <= 3
