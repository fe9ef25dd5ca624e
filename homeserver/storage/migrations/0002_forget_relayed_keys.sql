-- Issue 16: keys used to be taken from the server relaying events for
-- another (a hostile server could vouch for one that was down). Remote keys
-- cached before that stopped may be forgeries: forget them; each is fetched
-- again from its server (or a configured notary) when next needed.
DELETE FROM federation_server_keys;
DELETE FROM federation_key_responses;
