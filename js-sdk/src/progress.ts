// Progress for long work (bundling, uploading): a spinner line on stderr when it is a
// terminal, nothing otherwise (logs, pipes and CI stay clean).

export interface Progress {
  /** Replaces the text after the spinner. */
  update(text: string): void;
  /** Clears the line; `final`, if given, is left in its place. */
  done(final?: string): void;
}

const FRAMES = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

interface Stream {
  isTTY?: boolean;
  write(s: string): boolean;
}

const QUIET: Progress = { update: () => undefined, done: () => undefined };

/** Starts a progress line for `text` on `stream` (stderr) if it is a TTY. */
export function progress(text: string, stream: Stream = process.stderr): Progress {
  if (!stream.isTTY) return QUIET;
  let frame = 0;
  let current = text;
  const started = Date.now();
  const draw = (): void => {
    const secs = Math.floor((Date.now() - started) / 1000);
    stream.write(`\r\x1b[2K${FRAMES[frame % FRAMES.length]} ${current}${secs >= 1 ? ` (${secs}s)` : ""}`);
    frame += 1;
  };
  draw();
  const timer = setInterval(draw, 100);
  timer.unref();
  return {
    update(t: string) {
      current = t;
      draw();
    },
    done(final?: string) {
      clearInterval(timer);
      stream.write(`\r\x1b[2K${final !== undefined ? `${final}\n` : ""}`);
    },
  };
}

/** Runs `work` under a progress line that is cleared when it settles. */
export async function withProgress<T>(text: string, work: () => Promise<T>, stream: Stream = process.stderr): Promise<T> {
  const p = progress(text, stream);
  try {
    return await work();
  } finally {
    p.done();
  }
}
