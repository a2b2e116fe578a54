-- roomcast schema v7: a media token remembers the login session whose join issued it, so a
-- logout revokes that session's media tokens (a password change revokes all of the user's).
ALTER TABLE issued_tokens ADD COLUMN login_jti TEXT NOT NULL DEFAULT '';
CREATE INDEX issued_tokens_login ON issued_tokens (login_jti);
CREATE INDEX issued_tokens_user ON issued_tokens (username);
