-- Vector collections and their points (the embedded vector store). Every write to a
-- collection locks its row and takes the next `seq` (so writers of one collection commit in
-- seq order) and stamps the points it writes with it; a deleted point stays as a tombstone
-- (`vector` NULL) with its seq, so another server catches up with `seq > its own`.
-- `generation` changes when a collection is created again under the same name. `tsv` is the
-- payload's text for keyword search.
CREATE TABLE flowbot_vector_collections (
    name       TEXT    PRIMARY KEY,
    dimension  INTEGER NOT NULL,
    distance   TEXT    NOT NULL,
    generation TEXT    NOT NULL,
    seq        BIGINT  NOT NULL DEFAULT 0,
    created_at BIGINT  NOT NULL
);
CREATE TABLE flowbot_vector_points (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    seq        BIGINT  NOT NULL,
    vector     BYTEA,
    payload    TEXT    NOT NULL,
    body       TEXT    NOT NULL DEFAULT '',
    tsv        tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED,
    PRIMARY KEY (collection, id)
);
CREATE INDEX flowbot_vector_points_seq ON flowbot_vector_points (collection, seq);
CREATE INDEX flowbot_vector_points_tsv ON flowbot_vector_points USING GIN (tsv);
