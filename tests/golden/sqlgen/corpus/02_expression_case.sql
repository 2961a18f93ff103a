SELECT subject_id,
       CASE WHEN handle LIKE '%wx%' THEN upper(handle) ELSE avatar_key END AS shown,
       length(handle) + 1 AS hl
FROM profiles
