// Package pkgdoc holds a repository-wide test: every Go package of sild outside
// gen/ has a package doc comment that says what it is for.
package pkgdoc
