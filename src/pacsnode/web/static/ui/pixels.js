// Native pixel data on a canvas: typed arrays from raw frames, the grey-scale
// pipeline of PS3.3 C.11 (rescale, linear VOI window, MONOCHROME1 inversion)
// and RGB.  Shared by the viewer and the file inspector.

// The body of the first part of a multipart/related response.
export function firstPart(buffer, contentType) {
  const bytes = new Uint8Array(buffer);
  const m = /boundary="?([^";]+)"?/i.exec(contentType || '');
  if (!m) return bytes; // single part
  const enc = new TextEncoder();
  const find = (needle, from) => {
    outer: for (let i = from; i <= bytes.length - needle.length; i++) {
      for (let j = 0; j < needle.length; j++) if (bytes[i + j] !== needle[j]) continue outer;
      return i;
    }
    return -1;
  };
  const headEnd = find(enc.encode('\r\n\r\n'), 0);
  if (headEnd < 0) throw new Error('malformed multipart response');
  const start = headEnd + 4;
  // The closing delimiter is near the end: search backwards.
  const delim = enc.encode('\r\n--' + m[1]);
  for (let i = bytes.length - delim.length; i >= start; i--) {
    let ok = true;
    for (let j = 0; j < delim.length; j++) if (bytes[i + j] !== delim[j]) { ok = false; break; }
    if (ok) return bytes.subarray(start, i);
  }
  throw new Error('malformed multipart response');
}

// Stored values as a typed array (little endian, as the node sends them).
export function typedPixels(bytes, bitsAllocated, signed) {
  const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  if (bitsAllocated === 8) return signed ? new Int8Array(buf) : new Uint8Array(buf);
  if (bitsAllocated === 16) {
    return signed ? new Int16Array(buf, 0, buf.byteLength >> 1) : new Uint16Array(buf, 0, buf.byteLength >> 1);
  }
  if (bitsAllocated === 32) {
    return signed ? new Int32Array(buf, 0, buf.byteLength >> 2) : new Uint32Array(buf, 0, buf.byteLength >> 2);
  }
  throw new Error(`BitsAllocated ${bitsAllocated} is not shown in the browser`);
}

// An image: {rows, columns, samples, planar, photometric, slope, intercept,
// pixels (typed array), min, max (modality values), window: [c, w] | null}.
export function makeImage(meta, pixels) {
  const image = { ...meta, pixels };
  const n = meta.rows * meta.columns;
  if (meta.samples === 1) {
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = pixels[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const a = lo * meta.slope + meta.intercept, b = hi * meta.slope + meta.intercept;
    image.min = Math.min(a, b);
    image.max = Math.max(a, b);
  }
  return image;
}

// The window a new image opens with: its own, else its value range.
export function defaultWindow(image) {
  if (image.window && image.window[1] > 0) return image.window;
  if (image.samples !== 1) return [127.5, 256];
  const width = Math.max(1, image.max - image.min);
  return [image.min + width / 2, width];
}

// The modality value (after rescale) at column x, row y.
export function valueAt(image, x, y) {
  if (x < 0 || y < 0 || x >= image.columns || y >= image.rows) return null;
  const i = y * image.columns + x;
  if (image.samples === 1) return image.pixels[i] * image.slope + image.intercept;
  const n = image.rows * image.columns;
  const p = image.pixels;
  return image.planar ? [p[i], p[i + n], p[i + 2 * n]] : [p[3 * i], p[3 * i + 1], p[3 * i + 2]];
}

// Draw `image` windowed at [center, width] into `canvas` (PS3.3 C.11.2.1.2.1).
export function draw(canvas, image, center, width) {
  const { rows, columns } = image;
  if (canvas.width !== columns) canvas.width = columns;
  if (canvas.height !== rows) canvas.height = rows;
  const ctx = canvas.getContext('2d');
  const out = ctx.createImageData(columns, rows);
  const rgba = out.data;
  const n = rows * columns;
  const p = image.pixels;
  if (image.samples === 1) {
    const w = Math.max(1, width);
    // Output = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, computed as x * scale + offset
    // on stored values x (rescale folded in).
    const scale = (image.slope * 255) / Math.max(1e-9, w - 1);
    const offset = ((image.intercept - (center - 0.5)) / Math.max(1e-9, w - 1) + 0.5) * 255;
    const invert = image.photometric === 'MONOCHROME1';
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      let g = p[i] * scale + offset;
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      if (invert) g = 255 - g;
      rgba[j] = rgba[j + 1] = rgba[j + 2] = g;
      rgba[j + 3] = 255;
    }
  } else {
    const shift = image.bitsAllocated > 8 ? image.bitsAllocated - 8 : 0;
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      if (image.planar) {
        rgba[j] = p[i] >> shift; rgba[j + 1] = p[i + n] >> shift; rgba[j + 2] = p[i + 2 * n] >> shift;
      } else {
        rgba[j] = p[3 * i] >> shift; rgba[j + 1] = p[3 * i + 1] >> shift; rgba[j + 2] = p[3 * i + 2] >> shift;
      }
      rgba[j + 3] = 255;
    }
  }
  ctx.putImageData(out, 0, 0);
}

// Canvas pixel under a mouse event (the canvas is scaled by CSS).
export function canvasPoint(canvas, event) {
  const r = canvas.getBoundingClientRect();
  return [Math.floor(((event.clientX - r.left) * canvas.width) / r.width),
          Math.floor(((event.clientY - r.top) * canvas.height) / r.height)];
}

export const PRESETS = [
  { name: 'Soft tissue', c: 40, w: 400 },
  { name: 'Lung', c: -600, w: 1500 },
  { name: 'Bone', c: 400, w: 1800 },
  { name: 'Brain', c: 40, w: 80 },
  { name: 'Abdomen', c: 60, w: 400 },
];
