-- Every index on `certificates` is written by every issuance (twice for the
-- ones on columns the completion updates), so keep only those a query uses:
-- `policy` (inventory by policy), `(status, not_after)` (inventory by status,
-- and "expiring within", which filters on issued + not_after),
-- `(created_at, serial)` (the inventory's order and cursor). No query looks
-- certificates up by token, by predecessor, or by not_after alone.
DROP INDEX certificates_token_id_idx;
DROP INDEX certificates_predecessor_idx;
DROP INDEX certificates_not_after_idx;
