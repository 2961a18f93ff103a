SELECT subject_id, avatar_key FROM profiles WHERE handle LIKE '%a%' AND app_id = 'douyin'
