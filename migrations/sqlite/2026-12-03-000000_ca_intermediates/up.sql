-- CA certificates between the issuing certificate and the root of an
-- externally signed chain (`ca import-chain`), as concatenated DER, the
-- issuing certificate's issuer first. NULL when the root signed the issuing
-- certificate directly.
ALTER TABLE ca_state ADD COLUMN intermediates_der BLOB;
