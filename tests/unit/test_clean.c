/* Cleaning fixes that must not damage valid text: an ESC before a non-ASCII character
 * drops only the ESC; colour sequences (CSI) go, the text between them stays; an
 * unterminated OSC drops only "ESC ]"; overstrikes keep the last character; CRLF -> LF.
 * Each result must be valid UTF-8 and equal the expected text. */
#include <string.h>

#include "data/clean.h"
#include "tests/test.h"

static void expect(const char *label, const char *in, const char *want) {
    td_clean_rules r = td_clean_rules_default();
    r.min_chars = 1;
    r.min_letter_ratio = 0;
    r.max_symbol_ratio = 1;
    td_clean_out o;
    td_clean_reason why = td_clean_doc(&r, in, strlen(in), &o);
    int ok = why == TD_CLEAN_KEEP && o.text && !strcmp(o.text, want);
    printf("  %-34s %s\n", label, ok ? "ok" : "DIFFERENT");
    CHECK(ok, "%s: reason %s, got \"%s\", want \"%s\"", label, td_clean_reason_name(why),
          o.text ? o.text : "(dropped)", want);
    free(o.text);
}

int main(void) {
    expect("ESC before a 2-byte character", "caf\x1b\xc3\xa9 au lait", "caf\xc3\xa9 au lait");
    expect("CSI colour codes", "\x1b[33m-- Debian \x1b[32m\xe4\xb8\xad\x1b[m end",
           "-- Debian \xe4\xb8\xad end");
    expect("CSI cut by a non-ASCII byte", "a\x1b[3\xc3\xa9 b", "a\xc3\xa9 b");
    expect("unterminated OSC", "title\x1b]0;keep this text", "title0;keep this text");
    expect("terminated OSC", "x\x1b]0;title\x07y", "xy");
    expect("overstrike underline and bold", "_\bb_\bo_\bl_\bd and X\bX", "bold and X");
    expect("CRLF and lone CR", "one\r\ntwo\rthree", "one\ntwo\nthree");
    expect("ESC then ASCII (two-byte escape)",
           "a\x1b"
           "7b",
           "ab");
    return test_done("test_clean");
}
