// Builds page/ into dist/ (tests/it/sdk.rs runs `vite build`, then `vite preview`),
// with paths fixed to this directory, wherever vite is started from.
import { fileURLToPath } from "node:url";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
export default { root: here("./page"), build: { outDir: here("./dist"), emptyOutDir: true } };
