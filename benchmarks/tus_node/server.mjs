// The reference of the resumable-upload benchmark (benchmarks/scenarios/resumable.py):
// @tus/server with @tus/file-store, as its README's standalone server, staging into a
// directory the harness puts on tmpfs. No checksum extension: neither package has one.
//
//   node server.mjs PORT DIRECTORY      (installed by the harness with `npm ci` beside
//                                        its node_modules; see benchmarks/stack.py)
import { FileStore } from "@tus/file-store";
import { Server } from "@tus/server";

const [port, directory] = process.argv.slice(2);
if (!port || !directory) {
  console.error("usage: node server.mjs PORT DIRECTORY");
  process.exit(2);
}
const server = new Server({ path: "/files", datastore: new FileStore({ directory }) });
server.listen({ host: "127.0.0.1", port: Number(port) }, () => {
  console.log(`@tus/server listening on 127.0.0.1:${port}, staging in ${directory}`);
});
