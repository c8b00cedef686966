"""Head cards in the atlas report: click any cell of any layer x head heatmap, or open
`report.html#L17H4`, and that head's card shows every score with its rank and percentile, the labels
it earns with their evidence, the tokens it attends to most and its attention on the example texts.

The data travel inside the report as one JSON block (`<script id="interp-heads">`); a small script
draws the card from it with plotly, which the report already inlines. Nothing is fetched.
"""
from __future__ import annotations

import json

from interp.head_atlas import HeadAtlas

_STYLE = """
#head-card{position:fixed;top:0;right:0;width:min(560px,100%);height:100%;overflow:auto;background:#fff;
 border-left:2px solid #444;box-shadow:-4px 0 12px rgba(0,0,0,.15);padding:1em 1.2em;z-index:1000;display:none}
#head-card.open{display:block}#head-card h3{margin-top:0}#head-card .close{float:right;cursor:pointer;font-size:20px}
#head-card table{border-collapse:collapse;font-size:12px}#head-card td,#head-card th{border:1px solid #ddd;padding:2px 6px}
#head-card td.num{text-align:right}#head-card .labels li{margin:.2em 0}.head-find{margin:.5em 0}
"""

_SCRIPT = r"""
(function(){
  const DATA = JSON.parse(document.getElementById('interp-heads').textContent);
  const card = document.getElementById('head-card');
  const LABEL = /^L(\d+)H(\d+)$/;
  function el(tag, text, cls){const e=document.createElement(tag); if(text!==undefined&&text!==null) e.textContent=text; if(cls) e.className=cls; return e;}
  function fmt(v){return (v===null||v===undefined)?'—':(Math.abs(v)>=1e4||(v!==0&&Math.abs(v)<1e-3)?v.toExponential(3):Number(v.toPrecision(4)).toString());}
  function headOf(pt){
    if(pt.text && LABEL.test(String(pt.text))) return String(pt.text);
    const y=String(pt.y), x=String(pt.x);
    const m=/^L?(\d+)$/.exec(y), n=/^H?(\d+)$/.exec(x);
    return (m&&n)?('L'+m[1]+'H'+n[1]):null;
  }
  function render(label){
    const p = DATA.profiles[label];
    card.innerHTML='';
    if(!p){card.classList.remove('open'); return;}
    const close=el('span','×','close'); close.onclick=()=>{history.replaceState(null,'',location.pathname+location.search); card.classList.remove('open');};
    card.appendChild(close);
    card.appendChild(el('h3', label+' · '+DATA.model));
    card.dataset.head = label;
    card.appendChild(el('h4','Labels'));
    const ul=el('ul',null,'labels');
    if(!p.labels.length) ul.appendChild(el('li','no label: no taxonomy rule holds and no analysis named this head'));
    p.labels.forEach(([name,evidence,analysis])=>{const li=el('li'); li.dataset.label=name; li.appendChild(el('b',name)); li.appendChild(document.createTextNode(' ('+analysis+'): '+evidence)); ul.appendChild(li);});
    card.appendChild(ul);
    card.appendChild(el('h4','Scores (rank 1 = largest; percentile = share of heads at or below)'));
    const t=el('table'); t.className='scores';
    const hr=el('tr'); ['table','metric','value','rank','percentile'].forEach(h=>hr.appendChild(el('th',h))); t.appendChild(hr);
    p.scores.forEach(([tab,metric,value,rank,pct])=>{
      const tr=el('tr'); tr.dataset.key=tab+'.'+metric;
      tr.appendChild(el('td',tab)); tr.appendChild(el('td',metric));
      const v=el('td',fmt(value),'num'); v.dataset.value = value===null?'':String(value); tr.appendChild(v);
      const r=el('td',rank===null?'—':(rank+' / '+DATA.n_layers*DATA.n_heads),'num'); r.dataset.rank = rank===null?'':String(rank); tr.appendChild(r);
      tr.appendChild(el('td',pct===null?'—':pct.toFixed(1),'num')); t.appendChild(tr);});
    card.appendChild(t);
    if(p.top_tokens.length){
      card.appendChild(el('h4','Tokens it attends to most in the examples (α: attention received per query that sees the key)'));
      const tt=el('table'); tt.className='top-tokens';
      p.top_tokens.forEach(r=>{const tr=el('tr'); tr.appendChild(el('td',JSON.stringify(r.token))); tr.appendChild(el('td','example '+(r.text+1)+', position '+r.position)); tr.appendChild(el('td',fmt(r.alpha),'num')); tt.appendChild(tr);});
      card.appendChild(tt);
    }
    const pats = (DATA.examples.patterns||{})[label]||[];
    pats.forEach((rows,i)=>{
      const ex=DATA.examples.texts[i]; const n=rows.length;
      card.appendChild(el('h4','Attention on example '+(i+1)+' ('+n+' tokens), in %'));
      const z=rows.map(r=>{const full=r.slice(); while(full.length<n) full.push(null); return full;});
      const div=el('div'); div.className='pattern'; card.appendChild(div);
      const ticks=ex.tokens.map((s,j)=>j+':'+s);
      Plotly.newPlot(div,[{type:'heatmap',z:z,x:ticks,y:ticks,colorscale:[[0,'#ffffff'],[1,'#08306b']],zmin:0,zmax:100,
        hovertemplate:'query %{y}<br>key %{x}<br>%{z}%<extra></extra>'}],
        {height:340,margin:{l:90,r:10,t:10,b:90},yaxis:{autorange:'reversed',tickfont:{size:8}},xaxis:{tickfont:{size:8}}},
        {displayModeBar:false});
    });
    card.classList.add('open');
  }
  function fromHash(){const h=decodeURIComponent(location.hash.slice(1)); if(LABEL.test(h)) render(h); else card.classList.remove('open');}
  window.addEventListener('hashchange', fromHash);
  function wire(){
    document.querySelectorAll('.js-plotly-plot').forEach(gd=>{
      if(gd.closest('#head-card')||gd.dataset.headCards) return; gd.dataset.headCards='1';
      gd.on('plotly_click', ev=>{const lab=ev.points&&ev.points.length?headOf(ev.points[0]):null; if(lab&&DATA.profiles[lab]) location.hash=lab;});
    });
    const form=document.getElementById('head-find');
    if(form) form.onsubmit=(e)=>{e.preventDefault(); const v=form.querySelector('input').value.trim().toUpperCase(); location.hash=v;};
    fromHash();
  }
  if(document.readyState==='complete') wire(); else window.addEventListener('load', wire);
})();
"""


def head_cards_html(atlas: HeadAtlas, profiles: dict) -> str:
    """The card panel, its data and its script, for the end of the report's body. `profiles` is
    `atlas.to_dict()["profiles"]` (computed once by the caller, also written to atlas.json)."""
    data = {"model": atlas.model, "n_layers": atlas.n_layers, "n_heads": atlas.n_heads, "profiles": profiles,
            "examples": atlas.examples}
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return (f"<style>{_STYLE}</style><aside id='head-card' aria-live='polite'></aside>"
            f"<script type='application/json' id='interp-heads'>{blob}</script><script>{_SCRIPT}</script>")


def head_finder_html() -> str:
    """A box to open any head's card by name."""
    return ("<form id='head-find' class='head-find'>Open a head's card: <input size='8' placeholder='L17H4'> "
            "<button>open</button> (or click any cell of any layer × head heatmap; links like report.html#L17H4 "
            "open a card directly)</form>")
