/** Lines of a streamed NDJSON answer (exec, search), parsed as they arrive. */
export async function* ndjson(response: Response): AsyncGenerator<Record<string, unknown>> {
  if (!response.body) {
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      break;
    }
    buffered += value;
    let newline: number;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line) {
        yield JSON.parse(line) as Record<string, unknown>;
      }
    }
  }
  if (buffered.trim()) {
    yield JSON.parse(buffered) as Record<string, unknown>;
  }
}
