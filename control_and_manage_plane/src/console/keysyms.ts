/*
 * Text as key presses, for pasting into a guest that has no clipboard agent: each character
 * becomes its X11 keysym, with Shift held where a US keyboard needs it. QEMU turns keysyms into
 * scancodes through its keymap (en-us unless the domain says otherwise) and lowercases letters
 * for graphical consoles, so Shift has to be sent as a key of its own.
 */

export const XK_SHIFT_L = 0xffe1;
const XK_RETURN = 0xff0d;
const XK_TAB = 0xff09;

/** Characters a US keyboard types with Shift. */
const SHIFTED = new Set('~!@#$%^&*()_+{}|:"<>?ABCDEFGHIJKLMNOPQRSTUVWXYZ');

export interface KeyStroke {
  keysym: number;
  shift: boolean;
}

/**
 * The key presses that type `text`. Line ends (\n, \r\n, \r) are Return; other control characters
 * are dropped. Beyond Latin-1 the keysym is 0x01000000 + code point, which arrives only if the
 * VNC server's keymap has it.
 */
export function keystrokes(text: string): KeyStroke[] {
  const out: KeyStroke[] = [];
  const chars = [...text.replace(/\r\n?/g, "\n")];
  for (const ch of chars) {
    const cp = ch.codePointAt(0)!;
    if (ch === "\n") out.push({ keysym: XK_RETURN, shift: false });
    else if (ch === "\t") out.push({ keysym: XK_TAB, shift: false });
    else if (cp < 0x20 || cp === 0x7f) continue;
    else if (cp <= 0xff) out.push({ keysym: cp, shift: SHIFTED.has(ch) });
    else out.push({ keysym: 0x01000000 + cp, shift: false });
  }
  return out;
}
