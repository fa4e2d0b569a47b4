// The API reference, drawn from /openapi.json (fetched with the dashboard's token, if one was given).
"use strict";

function node(tag, text, cls) {
  const n = document.createElement(tag);
  if (text !== undefined) n.textContent = text;
  if (cls) n.className = cls;
  return n;
}

function schemaText(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return schemaText(schema.items) + "[]";
  return [schema.type, schema.enum && "one of " + schema.enum.join(", "), schema.pattern && "matching " + schema.pattern]
    .filter(Boolean).join(", ");
}

function operation(path, method, op, shared) {
  const box = node("section", undefined, "op");
  box.append(node("h2", method.toUpperCase() + " " + path), node("p", op.summary || ""));
  if (op.description) box.append(node("p", op.description));
  const params = [...(shared || []), ...(op.parameters || [])];
  if (params.length) {
    const table = node("table");
    table.append(...params.map((p) => {
      const row = node("tr");
      row.append(node("td", p.name), node("td", p.in), node("td", schemaText(p.schema)), node("td", p.description || ""));
      return row;
    }));
    box.append(node("h3", "Parameters"), table);
  }
  const body = op.requestBody && Object.values(op.requestBody.content || {})[0];
  if (body) box.append(node("h3", "Body"), node("p", schemaText(body.schema)));
  const answers = node("ul");
  for (const [status, r] of Object.entries(op.responses || {})) {
    answers.append(node("li", status + ": " + r.description + " (" + Object.keys(r.content || {}).join(", ") + ")"));
  }
  box.append(node("h3", "Answers"), answers);
  return box;
}

async function main() {
  const token = sessionStorage.getItem("acetrack-token");
  const resp = await fetch("/openapi.json", { headers: token ? { authorization: "Bearer " + token } : {} });
  if (resp.status === 401) { document.getElementById("docs-auth").hidden = false; return; }
  const doc = await resp.json();
  const main = document.getElementById("docs");
  main.append(node("p", doc.info.description));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (method !== "parameters") main.append(operation(path, method, op, item.parameters));
    }
  }
  main.append(node("h2", "Schemas"));
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    main.append(node("h3", name), node("pre", JSON.stringify(schema, null, 2)));
  }
}

document.addEventListener("DOMContentLoaded", main);
