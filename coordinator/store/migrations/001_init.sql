-- agentmesh coordinator schema, version 1. PostgreSQL 15 SQL (PGlite runs it too). Times are unix
-- milliseconds (bigint) passed from the injected clock; keys are 32-byte bytea; ids are text.

-- A mesh and its state version, bumped in the same transaction as every mesh_event. Roster, groups,
-- topic ACLs, services and settings are rebuilt from the signed mesh_event log (coordinator/mesh-state.ts);
-- tables below hold only what queries need besides (topic offsets, service tokens).
create table mesh (
  id text primary key,
  owner_pk bytea not null,
  state_version bigint not null default 0,
  created_at bigint not null
);

-- The signed mesh-state log: one row per version.
create table mesh_event (
  mesh text not null references mesh (id) on delete cascade,
  version bigint not null,
  prev_version bigint not null,
  kind text not null,
  -- the coordinator's system-event record
  signed bytea not null,
  sig bytea not null,
  created_at bigint not null,
  primary key (mesh, version)
);

-- Services registered by a member: a key, scopes, a hashed bearer token and a delivery transport.
create table service (
  mesh text not null references mesh (id) on delete cascade,
  id text not null,
  pk bytea not null,
  member_pk bytea not null,
  scopes text[] not null,
  token_hash bytea not null unique,
  transport text not null,
  webhook_url text,
  webhook_secret bytea,
  created_at bigint not null,
  revoked_at bigint,
  primary key (mesh, id)
);

-- Coordinator nodes (several may share one Postgres) and their heartbeats.
create table node (
  id text primary key,
  started_at bigint not null,
  heartbeat_at bigint not null
);

-- One row per key that has said hello: live (node_id set, connected) or inside its lease.
create table presence (
  mesh text not null references mesh (id) on delete cascade,
  pk bytea not null,
  member_pk bytea not null,
  role text not null,
  session_id text,
  instance_id text not null,
  presence_id text not null,
  node_id text,
  connected boolean not null,
  status text not null,
  summary text,
  display_name text,
  capabilities bytea,
  attestation_signed bytea,
  attestation_sig bytea,
  -- set when the socket closed: the key may reattach silently until then; null while connected
  lease_until bigint,
  -- true once the single peer_left went out; the row stays for includeOffline listings
  left_announced boolean not null default false,
  updated_at bigint not null,
  primary key (mesh, pk)
);
create index presence_lease on presence (lease_until) where lease_until is not null and not left_announced;

-- Idempotency: one row per accepted message, kept for at least the dedupe window (longer than the
-- message rows it describes, so a retry after delivery still answers `duplicate`).
create table dedupe (
  mesh text not null,
  sender bytea not null,
  client_message_id text not null,
  envelope_hash bytea not null,
  -- the send_ack's outcome: delivered | queued | partial
  state text not null,
  -- msgpack map recipient hex → state, for fan-out
  recipients bytea,
  created_at bigint not null,
  expires_at bigint not null,
  primary key (mesh, sender, client_message_id)
);
create index dedupe_expiry on dedupe (expires_at);

-- One row per (message, recipient) still owed: a DM, one copy of a group fan-out (holding only that
-- recipient's key box). Deleted when acked or expired.
create table delivery (
  id text primary key,
  mesh text not null,
  recipient bytea not null,
  sender bytea not null,
  client_message_id text not null,
  envelope bytea not null,
  size integer not null,
  queued_at bigint not null,
  expires_at bigint not null,
  -- the connection (presence_id) holding the claim, and until when
  claim_owner text,
  claim_until bigint,
  attempts integer not null default 0,
  -- whether the sender wants a delivery_receipt when this is acked
  receipt boolean not null default true
);
create index delivery_recipient on delivery (mesh, recipient, queued_at, id);
create index delivery_expiry on delivery (expires_at);
create index delivery_claim on delivery (claim_until) where claim_until is not null;

-- Topics: gap-free offsets assigned in the inserting transaction.
create table topic (
  mesh text not null references mesh (id) on delete cascade,
  name text not null,
  next_offset bigint not null default 0,
  -- member keys allowed to subscribe and post; null = every member
  acl bytea[],
  key_epoch bigint not null default 1,
  retention_ms bigint,
  changed_version bigint not null,
  primary key (mesh, name)
);

create table topic_message (
  mesh text not null,
  topic text not null,
  "offset" bigint not null,
  sender bytea not null,
  client_message_id text not null,
  envelope bytea not null,
  created_at bigint not null,
  expires_at bigint not null,
  primary key (mesh, topic, "offset")
);
create index topic_message_expiry on topic_message (expires_at);

create table topic_subscription (
  mesh text not null,
  topic text not null,
  subscriber bytea not null,
  -- the next offset this subscriber has not acked
  committed_offset bigint not null,
  updated_at bigint not null,
  primary key (mesh, topic, subscriber)
);

-- Sealed topic keys waiting for a subscriber that was offline when they were granted.
create table topic_key_grant (
  mesh text not null,
  topic text not null,
  epoch bigint not null,
  to_pk bytea not null,
  from_pk bytea not null,
  sealed bytea not null,
  created_at bigint not null,
  primary key (mesh, topic, epoch, to_pk)
);
