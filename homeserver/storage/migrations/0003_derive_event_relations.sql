-- Issue 17: event_relations is derived by a trigger on insert; the events a
-- database held before the table existed are derived once here.
INSERT INTO event_relations
    SELECT * FROM event_relations_derived
    ON CONFLICT DO NOTHING;
