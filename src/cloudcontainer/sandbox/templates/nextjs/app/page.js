export default function Home() {
  return (
    <main>
      <h1>Hello from Next.js</h1>
      <p>Edit app/page.js and save to see it update.</p>
    </main>
  );
}
