// Files chosen on the user's disk: plain files, folders and zips (unzipped
// here with fflate) as a flat list of {name, bytes}.
import { unzipSync } from '../vendor/fflate-0.8.3.js';

const isZip = (b) => b.length > 4 && b[0] === 0x50 && b[1] === 0x4b && b[2] === 0x03 && b[3] === 0x04;

// Part 10 files carry "DICM" after the 128-byte preamble.
export const isDicom = (b) => b.length > 132 && b[128] === 0x44 && b[129] === 0x49 && b[130] === 0x43 && b[131] === 0x4d;

export async function readFiles(fileList, onProgress) {
  const out = [];
  const files = Array.from(fileList);
  for (let i = 0; i < files.length; i++) {
    const f = files[i];
    const bytes = new Uint8Array(await f.arrayBuffer());
    const name = f.webkitRelativePath || f.name;
    if (isZip(bytes)) {
      const entries = unzipSync(bytes, { filter: (e) => !e.name.endsWith('/') && !e.name.startsWith('__MACOSX/') });
      for (const [inner, data] of Object.entries(entries)) out.push({ name: `${name}/${inner}`, bytes: data });
    } else {
      out.push({ name, bytes });
    }
    if (onProgress) onProgress(i + 1, files.length);
  }
  return out;
}
