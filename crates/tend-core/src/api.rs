//! API request and response shapes (filled in by the server work).
