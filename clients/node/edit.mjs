// Minimal Node.js client of the InterFaceGAN editor, straight from the .proto files (no generated code):
// lists the catalog, then streams one Edit and writes each step as a PNG.
//   cd clients/node && npm install && IFGAN_ADDRESS=localhost:50051 node edit.mjs [attribute] [seed]
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const protos = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../protos");
const definition = protoLoader.loadSync("interfacegan/v1/editor.proto",
  { includeDirs: [protos], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
const { interfacegan } = grpc.loadPackageDefinition(definition);

const address = process.env.IFGAN_ADDRESS ?? "localhost:50051";
const [attribute = "age", seed = "7"] = process.argv.slice(2);
const metadata = new grpc.Metadata();
if (process.env.IFGAN_TOKEN) metadata.set("authorization", `Bearer ${process.env.IFGAN_TOKEN}`);
const editor = new interfacegan.v1.EditorService(address, grpc.credentials.createInsecure());

editor.GetCatalog({}, metadata, { deadline: Date.now() + 30_000 }, (err, catalog) => {
  if (err) { console.error(`GetCatalog: ${err.code} ${err.details}`); process.exit(1); }
  console.log(`models: ${catalog.models.map((m) => m.name).join(", ")}`);
  console.log(`boundaries: ${catalog.boundaries.map((b) => `${b.ref.attribute} v${b.ref.version}`).join(", ")}`);

  const request = { seed, edits: [{ attribute, start: -3, end: 3, steps: 5 }], rescore: true };
  const call = editor.Edit(request, metadata, { deadline: Date.now() + 120_000 });
  call.on("data", (reply) => {
    const file = `${attribute}_${reply.step_index}.png`;
    writeFileSync(file, reply.image.encoded);
    const score = reply.scores.find((s) => s.attribute === attribute);
    console.log(`${file}  distance ${reply.distance.toFixed(1)}  ${attribute} ${score?.valid ? score.value.toFixed(2) : "n/a"}`);
  });
  call.on("error", (e) => { console.error(`Edit: ${e.code} ${e.details}`); process.exitCode = 1; });
  call.on("end", () => editor.close());
});
