DROP TABLE ca_key_reservations;
