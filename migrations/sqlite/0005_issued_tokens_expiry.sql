-- roomcast schema v5: expired issued-token records are deleted on every join; index them.
CREATE INDEX issued_tokens_expiry ON issued_tokens (expires_at);
