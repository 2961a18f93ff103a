CREATE TABLE features AS
SELECT subject_id, handle || ':' || avatar_key AS profile_key FROM profiles
