// Package indextest is the conformance suite that every index database
// backend runs: the chunk index, upload sessions, the file catalogue with
// its listing and pruning (no version number given twice), and that all of
// them survive closing and reopening. A backend's test calls Run with a
// function that opens it.
package indextest
