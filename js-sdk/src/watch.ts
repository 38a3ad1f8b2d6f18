// What `isola dev` watches: the folders its build reads, one non-recursive watch each.
//
// Node 20's `fs.watch(dir, { recursive: true })` on Linux walks the whole tree at start and
// puts an inotify watch on every file and folder below it, node_modules included: 30,000
// files cost half a second of a blocked event loop and 31,562 watches (past the 8,192 some
// distributions allow), and a file saved by rename (as many editors save) keeps its watch on
// the old, deleted inode. A folder's own watch reports every name in it, renames included.
import { createHash } from "node:crypto";
import { watch, readdirSync, readFileSync, type FSWatcher } from "node:fs";
import { dirname, join, relative, sep } from "node:path";

/** Folders no build reads from and every build writes to, or that hold other tools' state. */
export const IGNORED = ["node_modules", ".isola", ".git", "dist", ".wrangler"];

/** Whether `file` lies in `dir` (or is it). */
export function within(dir: string, file: string): boolean {
  const r = relative(dir, file);
  return r === "" || (!r.startsWith("..") && !r.startsWith(sep));
}

/** `dir` and every folder below it, leaving out the `IGNORED` names. */
export function foldersUnder(dir: string): string[] {
  const out = [dir];
  for (let i = 0; i < out.length; i++) {
    let entries;
    try {
      entries = readdirSync(out[i]!, { withFileTypes: true });
    } catch {
      continue; // gone, or not a folder: its parent's watch reports it coming back
    }
    for (const e of entries) if (e.isDirectory() && !IGNORED.includes(e.name)) out.push(join(out[i]!, e.name));
  }
  return out;
}

/** The files directly in `folders`. */
export function filesIn(folders: Iterable<string>): string[] {
  const out: string[] = [];
  for (const dir of folders) {
    try {
      for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isFile()) out.push(join(dir, e.name));
    } catch {
      // gone since it was listed
    }
  }
  return out;
}

/** The folders of `files`. */
export function foldersOf(files: Iterable<string>): Set<string> {
  const out = new Set<string>();
  for (const f of files) out.add(dirname(f));
  return out;
}

/** Watches a set of folders, each without recursion; `onChange` gets the absolute path of what changed. */
export class FolderWatch {
  private readonly watchers = new Map<string, FSWatcher>();

  constructor(private readonly onChange: (file: string) => void) {}

  /** Watches exactly `folders` from now on (a folder that cannot be watched is left out). */
  set(folders: Iterable<string>): void {
    const want = new Set(folders);
    for (const [dir, w] of this.watchers) {
      if (!want.has(dir)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
    for (const dir of want) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, (_event, name) => this.onChange(name ? join(dir, String(name)) : dir));
        // A folder removed while watched: its parent's watch reports the name.
        w.on("error", () => {
          w.close();
          this.watchers.delete(dir);
        });
        this.watchers.set(dir, w);
      } catch {
        // Does not exist (yet): the parent's watch reports it when it appears.
      }
    }
  }

  /** The folders watched now. */
  folders(): string[] {
    return [...this.watchers.keys()];
  }

  close(): void {
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }
}

/**
 * What files held when a build started, so that a build step rewriting a file it reads with
 * the same bytes (code generators do) does not count as a change and rebuild for ever.
 */
export class Contents {
  private readonly hashes = new Map<string, string | undefined>();

  private static hash(file: string): string | undefined {
    try {
      return createHash("sha256").update(readFileSync(file)).digest("hex");
    } catch {
      return undefined; // missing or a folder: compared as such
    }
  }

  /** Records what `files` hold now, forgetting every other file. */
  record(files: Iterable<string>): void {
    this.hashes.clear();
    for (const f of files) this.hashes.set(f, Contents.hash(f));
  }

  /** Whether `file` differs from what was recorded (a file never recorded differs). */
  changed(file: string): boolean {
    if (!this.hashes.has(file)) return true;
    return this.hashes.get(file) !== Contents.hash(file);
  }
}
