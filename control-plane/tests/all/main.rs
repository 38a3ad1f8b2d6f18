//! The control plane's integration tests, in one binary: the library links
//! V8 (uploads are checked by starting them), and each test binary would
//! link it again, which on a small machine costs more than the tests.

mod api;
mod cli;
mod observe;
