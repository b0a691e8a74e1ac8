// The ES module entry of @kgate/client: kgate.js (one file for script tags and
// CommonJS, the file the gateway serves) re-exported by name.
import kgate from "./kgate.js";

export const { Client, Deltas, encodeCursor, version } = kgate;
export default kgate;
