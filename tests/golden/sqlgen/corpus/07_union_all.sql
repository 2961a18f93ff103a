SELECT handle AS name FROM profiles WHERE app_id = 'douyin'
UNION ALL
SELECT avatar_key AS name FROM profiles WHERE app_id = 'duoshan'
