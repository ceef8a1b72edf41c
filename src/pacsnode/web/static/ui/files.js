// Files chosen on the user's disk: plain files, folders and zips (unzipped
// here with fflate), one file at a time so that a large folder is never held
// in memory whole.
import { unzipSync } from './vendor/fflate-0.8.3.js';

const isZip = (b) => b.length > 4 && b[0] === 0x50 && b[1] === 0x4b && b[2] === 0x03 && b[3] === 0x04;

// Part 10 files carry "DICM" after the 128-byte preamble.
export const isDicom = (b) => b.length > 132 && b[128] === 0x44 && b[129] === 0x49 && b[130] === 0x43 && b[131] === 0x4d;

// {name, bytes, share} for each file, each zip's members in its place;
// `share` is the part of the chosen files' total size the entry stands for
// (a zip's size spread over its members), for progress.
export async function* entries(fileList) {
  for (const f of Array.from(fileList)) {
    const bytes = new Uint8Array(await f.arrayBuffer());
    const name = f.webkitRelativePath || f.name;
    if (isZip(bytes)) {
      const members = Object.entries(unzipSync(bytes, {
        filter: (e) => !e.name.endsWith('/') && !e.name.startsWith('__MACOSX/'),
      }));
      const share = f.size / Math.max(1, members.length);
      for (const [inner, data] of members) yield { name: `${name}/${inner}`, bytes: data, share };
      if (!members.length) yield { name, bytes: new Uint8Array(0), share: f.size };
    } else {
      yield { name, bytes, share: f.size };
    }
  }
}

export async function readFiles(fileList) {
  const out = [];
  for await (const entry of entries(fileList)) out.push(entry);
  return out;
}
