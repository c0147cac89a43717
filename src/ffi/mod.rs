//! The C ABI of `transfer_engine_c.h`. PLACEHOLDER until the FFI work lands.
