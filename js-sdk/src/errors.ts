// Errors the command line prints as `✘ message` (no stack).

/** A wrong command line: exit status 2. */
export class UsageError extends Error {
  override name = "UsageError";
}
