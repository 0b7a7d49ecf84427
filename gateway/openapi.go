package gateway

import (
	"embed"
	"encoding/json"
	"fmt"
)

// The documents are written by protoc-gen-openapiv2 (buf generate).
//
//go:embed openapi/registry_admin.swagger.json openapi/node_admin.swagger.json
var openapiFS embed.FS

func mustRead(name string) []byte {
	b, err := openapiFS.ReadFile(name)
	if err != nil {
		panic(err) // embedded at build time
	}
	return b
}

// RegistryOpenAPI returns the generated OpenAPI (Swagger 2.0) document of
// the registry's admin REST API, as generated.
func RegistryOpenAPI() []byte { return mustRead("openapi/registry_admin.swagger.json") }

// NodeOpenAPI returns the generated OpenAPI (Swagger 2.0) document of the
// node's admin REST API, as generated.
func NodeOpenAPI() []byte { return mustRead("openapi/node_admin.swagger.json") }

// patchOpenAPI completes a generated document with what the protos cannot
// say: the API's title and the bearer API key every call needs.
func patchOpenAPI(doc []byte, title string) ([]byte, error) {
	var d map[string]any
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("openapi document: %w", err)
	}
	info, _ := d["info"].(map[string]any)
	if info == nil {
		info = map[string]any{}
	}
	if title != "" {
		info["title"] = title
	}
	info["version"] = "v1"
	delete(info, "description")
	d["info"] = info
	d["securityDefinitions"] = map[string]any{
		"ApiKey": map[string]any{
			"type":        "apiKey",
			"in":          "header",
			"name":        "Authorization",
			"description": "An API key as \"Bearer sild_...\"",
		},
	}
	d["security"] = []any{map[string]any{"ApiKey": []any{}}}
	return json.MarshalIndent(d, "", "  ")
}
