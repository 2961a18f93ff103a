SELECT subject_id, handle, avatar_key FROM profiles WHERE app_id = 'douyin'
