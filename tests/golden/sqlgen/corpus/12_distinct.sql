SELECT DISTINCT app_id, handle FROM profiles
