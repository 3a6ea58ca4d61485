/**
 * cloudcontainer: a short-lived page token for this page, minted with the API key kept in
 * bolt's server environment (CLOUDCONTAINER_API_KEY), which never reaches the browser.
 * Added by cloudcontainer's integrations/bolt-diy/kit.py.
 */
type Context = { cloudflare?: { env?: Record<string, string> } };

export async function action({ context }: { context: Context }) {
  const env: Record<string, string | undefined> = {
    ...((globalThis as any).process?.env ?? {}),
    ...(context.cloudflare?.env ?? {}),
  };
  const server = env.CLOUDCONTAINER_URL;
  const key = env.CLOUDCONTAINER_API_KEY;

  if (!server || !key) {
    return Response.json(
      { error: 'Set CLOUDCONTAINER_URL and CLOUDCONTAINER_API_KEY in bolt.diy\'s environment.' },
      { status: 500 },
    );
  }

  let answer: Response;

  try {
    answer = await fetch(`${server.replace(/\/+$/, '')}/api/auth/page-tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}` },
    });
  } catch (error) {
    return Response.json(
      { error: `The cloudcontainer server at ${server} cannot be reached: ${error}` },
      { status: 502 },
    );
  }

  if (!answer.ok) {
    return Response.json(
      { error: `cloudcontainer refused the API key: ${await answer.text()}` },
      { status: 502 },
    );
  }

  const { token, expires_in } = (await answer.json()) as { token: string; expires_in: number };

  return Response.json({ token, expires_in }, { headers: { 'cache-control': 'no-store' } });
}
