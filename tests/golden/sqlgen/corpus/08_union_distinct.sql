SELECT handle FROM profiles WHERE app_id = 'douyin'
UNION
SELECT handle FROM profiles WHERE app_id = 'duoshan'
