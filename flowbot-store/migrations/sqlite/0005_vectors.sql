-- Vector collections and their points (the embedded vector store). Every write to a
-- collection takes the next `seq` of its row and stamps the points it writes with it; a
-- deleted point stays as a tombstone (`vector` NULL) with its seq, so another process
-- catches up with `seq > its own`. `generation` changes when a collection is created again
-- under the same name. `body` is the payload's text, indexed for keyword search by the FTS5
-- table below (external content, kept in step by the triggers).
CREATE TABLE flowbot_vector_collections (
    name       TEXT    PRIMARY KEY,
    dimension  INTEGER NOT NULL,
    distance   TEXT    NOT NULL,
    generation TEXT    NOT NULL,
    seq        INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE flowbot_vector_points (
    pk         INTEGER PRIMARY KEY,
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    vector     BLOB,
    payload    TEXT    NOT NULL,
    body       TEXT    NOT NULL DEFAULT '',
    UNIQUE (collection, id)
);
CREATE INDEX flowbot_vector_points_seq ON flowbot_vector_points (collection, seq);
CREATE VIRTUAL TABLE flowbot_vector_fts USING fts5(
    body, content = 'flowbot_vector_points', content_rowid = 'pk', tokenize = 'porter unicode61'
);
CREATE TRIGGER flowbot_vector_points_ai AFTER INSERT ON flowbot_vector_points BEGIN
    INSERT INTO flowbot_vector_fts (rowid, body) VALUES (new.pk, new.body);
END;
CREATE TRIGGER flowbot_vector_points_ad AFTER DELETE ON flowbot_vector_points BEGIN
    INSERT INTO flowbot_vector_fts (flowbot_vector_fts, rowid, body) VALUES ('delete', old.pk, old.body);
END;
CREATE TRIGGER flowbot_vector_points_au AFTER UPDATE OF body ON flowbot_vector_points BEGIN
    INSERT INTO flowbot_vector_fts (flowbot_vector_fts, rowid, body) VALUES ('delete', old.pk, old.body);
    INSERT INTO flowbot_vector_fts (rowid, body) VALUES (new.pk, new.body);
END;
