# The fuzz targets, one per parser: tests/fuzz/fuzz_NAME.cpp with its seed
# corpus in tests/fuzz/corpus/NAME/ and reproducers of fixed findings in
# tests/fuzz/regressions/NAME/. Read by the fuzz build (tests/fuzz/) and by
# the replay ctests of the ordinary builds (tests/CMakeLists.txt).
set(ISTHMUS_FUZZ_TARGETS
  imap_command imap_reply pop3 smtp_command smtp_data smtp_reply proxy_protocol sasl
  config static_directory admin_request ldap_filter sql_template managesieve move_events
  imap_wire imap_session)
