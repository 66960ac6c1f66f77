// Package storetest is the conformance suite that every index.Store backend
// runs: the local directory store, and any object-storage store that joins
// it. A backend's test calls Run with a function that opens it.
package storetest
